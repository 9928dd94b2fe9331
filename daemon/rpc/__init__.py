"""The gRPC side: TorchServe's InferenceAPIsService and ManagementAPIsService, and the Open
Inference Protocol's GRPCInferenceService, served by grpcio's asyncio server in the daemon's
event loop. Like daemon/http/, it parses, calls the same core (model manager, job queues) and
renders; the generated protobuf modules are in ``generated/`` (``python -m
daemon.rpc.codegen``). Named ``rpc``, not ``grpc``, so it never shadows the grpc library."""
