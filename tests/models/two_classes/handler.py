"""Two handler classes: ambiguous, so loading must fail with a clear cause."""


class First:
    def handle(self, data, context):
        return data


class Second:
    def handle(self, data, context):
        return data
