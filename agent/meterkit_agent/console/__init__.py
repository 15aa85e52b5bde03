"""The usage console: pages served at ``/console/`` by the ledger, and the JSON they read.

The pages are static files (plain HTML, small vanilla JavaScript modules, uPlot vendored
under ``static/vendor``): no build step, nothing fetched from the internet. They carry no
data; every number they show comes from the ledger's API, called with the ledger's bearer
token, which the page asks for once and keeps in ``sessionStorage``. docs/console.md says
what each page reads.
"""

from .routes import register

__all__ = ["register"]
