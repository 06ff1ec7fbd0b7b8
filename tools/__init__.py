"""Maintainer tools that are not part of any install (the wheel carries none of them)."""
