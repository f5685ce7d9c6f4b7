"""Model folders (native format: JSON config + safetensors) and TorchScript / ONNX export."""
