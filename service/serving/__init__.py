"""The serving core: the one request path both protocols share (inference), the registry
of served versions (repository), loading a version from its folder (loader), the folder
layout (layout), poll mode (poller), retiring versions (retirement) and the served model
(model). Wire-free. May import: telemetry, batching, images, runtime and below."""
