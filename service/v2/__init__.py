"""Generated KServe v2 protocol code (`make protos`; do not edit the *_pb2* files).

The generated modules register their descriptors in POOL, a private descriptor pool, not
protobuf's process-wide default. tritonclient and kserve register the very same
`inference.*` names in the default pool; a private pool lets cnnserve live in one process
with either of them (tests and load generators do exactly that).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
