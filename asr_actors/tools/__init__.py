"""Tools around the gateway that the `asr-actors` command runs on request, never while serving: the
benchmark (`bench`) and the engine protocol's conformance suite (`conformance`)."""
