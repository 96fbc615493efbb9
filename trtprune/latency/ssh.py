"""A Jetson (or any TensorRT machine) driven over SSH: the ONNX model is copied there, trtexec builds and
times the engine there (engines are built on the device they run on), and the JSON exports and the
plan are copied back. See :class:`trtprune.latency.runners.SshRunner` for how commands are passed."""

from __future__ import annotations

from trtprune.errors import TrtpruneError
from trtprune.latency.runners import SshRunner
from trtprune.latency.trt import TrtBackend


class SshBackend(TrtBackend):
    name = "ssh"
    visible_devices = "0"  # this machine's CUDA_VISIBLE_DEVICES says nothing about the device's GPUs

    def _make_runner(self):
        return SshRunner(self.device.host, self.device.timeout_s)

    def _missing(self):

        d = self.device
        return TrtpruneError(
            f"trtexec was not found on {d.host} (tried '{d.trtexec}', PATH and /usr/src/tensorrt/bin/trtexec)",
            why="the ssh backend runs NVIDIA's trtexec on the device",
            fix="install TensorRT there (JetPack ships it in /usr/src/tensorrt/bin) or set trtexec in the device file",
        )
