"""A device plugin speaking the kubelet's device-plugin gRPC API (v1beta1, api.proto copied
from k8s.io/kubelet v0.35.4; api_pb2*.py generated from it by `python -m
stoker.devcluster.realnodes.deviceplugin.generate`). It advertises fake ``nvidia.com/gpu``
devices, so GPU requests on real nodes are scheduled and allocated by the kubelet itself."""
