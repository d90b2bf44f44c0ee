"""The joserfc registry the verifier and the signer share: exactly the algorithms asked for.

joserfc emits a SecurityWarning whenever "EdDSA" is used (RFC 9864 prefers "Ed25519"). The
operator publishes Ed25519 keys as "EdDSA", because that is what today's verifiers accept, so a
warning per token would flood the logs of every service. The key's crv is still checked by the
signature, and nothing outside ``algorithms`` is ever allowed.
"""

from __future__ import annotations

from typing import Any

from joserfc import jws
from joserfc.errors import UnsupportedAlgorithmError

__all__ = ["ExactAlgorithmRegistry"]


class ExactAlgorithmRegistry(jws.JWSRegistry):
    """Allows exactly ``algorithms`` (joserfc's ``JWSRegistry(algorithms=...)``), without the
    EdDSA SecurityWarning."""

    def get_alg(self, name: str) -> Any:
        if name not in self.algorithms or name not in (self.allowed or ()):
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]
