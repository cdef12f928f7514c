"""The emulator's request handlers, one module per resource; `_app` holds the one route table."""
