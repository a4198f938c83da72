"""The `gemdeploy` command line (installed as gemdeploy.cli)."""
