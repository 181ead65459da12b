"""Investigation tools: benches that measured a design question once (the answer is in
bench/README.md) and are kept to measure it again; `make bench` and the user-facing benches
are in bench/ itself."""
