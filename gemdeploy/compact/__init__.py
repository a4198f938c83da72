"""Stage 2, `gemdeploy compact`: remove dead channels, store sparse weights compactly, project to N:M."""
