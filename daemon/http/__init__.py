"""The HTTP side: starlette apps and routes, the hot prediction path, auth, OpenAPI."""
