"""The command line's client side: `cnnserve infer` and `health` (client), `cnnserve
profile` (profiler), and the hints commands print (hints). The `cnnserve` entry point
itself is service/__main__.py. May import: serving's folder layout and the layers below."""
