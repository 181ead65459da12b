"""Front ends: the KServe v2 / Triton protocols on the wire. The gRPC servicer and its
stream (grpc_api, grpc_stream, grpc_codec), the REST app and its codec (http_api,
http_codec, http_connections), Triton's config and statistics messages (triton_config), and
transport security (security). Thin: every request goes through serving.inference.
May import: serving and everything below it, and the generated service.v2."""
