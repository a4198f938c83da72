"""`python -m gemdeploy.cli` (what torchrun launches)."""

from gemdeploy.cli.app import main

main()
