"""The commands people run: ``signing-key-operator`` (main.py) with its run, serve, revoke-token
(revoke_token.py), dev-cluster and demo (demo.py) subcommands, and the kubectl plugin
``kubectl-signingkeys`` (kubectl_plugin.py, its timeline picture in key_timeline.py).

They parse arguments and start what lives beside this folder (the controller, the sidecar, the
dev cluster) or use the libraries (sign, verify); nothing outside cli/ imports from it, so the
controller and the sidecar can be read without the command line's concerns
(tests/unit/test_layout.py).
"""
