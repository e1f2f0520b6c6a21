"""FastAPI adapter: FastAPI apps are Starlette apps, so this is the Starlette adapter."""

from __future__ import annotations

from instrument.adapters.starlette import InstrumentMiddleware, instrument_app

__all__ = ["InstrumentMiddleware", "instrument_app"]
