"""tierdeck console core: fleet model, deployer, telemetry store, command line. No widgets here."""

from __future__ import annotations
