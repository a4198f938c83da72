"""The run directory: its layout, the resolved configuration, and loading what a finished run holds."""
