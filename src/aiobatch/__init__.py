"""aiobatch: drive Azure Batch and Azure Blob Storage end to end from asyncio.

The public face of the client lives here; the local Batch service is `aiobatch.emulator`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
