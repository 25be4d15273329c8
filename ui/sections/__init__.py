"""The page's sections, one module each, in the order a visitor meets them: each build() lays out its
components and returns them; each wire() connects its events to the Explorer (ui/handlers.py)."""
