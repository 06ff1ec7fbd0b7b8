"""Example pipeline files (package data)."""
