"""The vocabulary every layer shares: request and response records (records), v2
datatypes (datatypes), tensor contents (tensor_contents) and the errors, each carrying its
status (errors). Imports nothing of service."""
