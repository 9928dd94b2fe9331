"""Wire protocol between the torchd daemon and its worker processes.

A frame is a 4-byte big-endian length followed by a msgpack map carrying a protocol version
field. The codec here is pure: no sockets and no event loop inside it.
"""
