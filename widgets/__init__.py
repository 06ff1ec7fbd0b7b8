"""tierdeck Qt widgets: they observe app/ models through signals and send intents back."""

from __future__ import annotations
