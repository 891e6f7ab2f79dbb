"""What the tests, scripts/demo (through scripts/devtools.py) and scripts/bench share: the real
things to run against (real.py), webhook signing (signing.py), signed deliveries from the
documented payloads (deliveries.py), gatebot settings built one way (settings.py), a project
wired to them (setup.py), HTTP helpers (http.py), and helpers for servers under test (server.py)
and for deploys (deploys.py).

Outside the installed package on purpose: these need a source checkout (the sample app is in
scripts/sample-app). setup.py, server.py and deploys.py serve the tests alone; no module here
imports pytest, so scripts put the checkout on sys.path and import the rest.
"""
