"""The JWKS sidecar (``signing-key-operator serve``): serves the JWK Set the operator publishes.

app.py (HTTP endpoints), fastpath.py (JWKS GET/HEAD without aiohttp's request layer,
handing everything else to the app), state.py (the current good set), sources.py (mounted file or
ConfigMap watch), settings.py, metrics.py, cli.py (arguments and process lifecycle).
"""
