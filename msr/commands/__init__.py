"""The command line's parts beside `cli.py`: shared options and error reporting, and the tool
groups (`msr preset`, `msr projectors`, `msr recipe`)."""
