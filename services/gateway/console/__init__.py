"""The web console for people at `/console` (pages.py: routes; session.py: cookies and CSRF; render.py: templates)."""
