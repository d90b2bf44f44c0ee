"""The operator: kopf's registrations (handlers.py), one reconcile of a policy (reconciler.py:
gather, the pure planner of core/, act in a crash-safe order), and what a reconcile drives
beside the keys: the served-JWKS read-back, the revocation document and its Redis mirror, the
key reader's worker process, metrics and settings.

It talks to the API through k8s/ and decides through core/; it never imports the CLIs or the
sidecar, which run in other processes (tests/unit/test_layout.py).
"""
