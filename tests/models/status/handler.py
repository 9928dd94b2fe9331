"""Sets status 201, a response header and a content type."""


def handle(data, context):
    if data is None:
        return None
    for idx in range(len(data)):
        context.set_response_status(201, "Created", idx)
        context.set_response_header(idx, "X-Custom", "yes")
        context.set_response_content_type(idx, "text/plain")
    return ["made" for _ in data]
