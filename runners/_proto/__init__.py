"""Generated protocol stubs (see runners/protogen.py)."""
