"""The JWKS sidecar (``signing-key-operator serve``): serves the JWK Set the operator publishes.

app.py (HTTP endpoints), state.py (the current good set), sources.py (mounted file or
ConfigMap watch), settings.py, metrics.py, cli.py (arguments and process lifecycle).
"""
