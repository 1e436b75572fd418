"""What `ffx export` accepts and promises, importable without torch: the opsets it writes and the
parity tolerance every model it writes meets. The command's options and the fold of an existing
ONNX (`--from-onnx --fold-normalization`, which needs no torch) read them from here."""

MIN_OPSET = 17
# The newest opset torch's exporter declares (torch.onnx._constants.ONNX_MAX_OPSET: 23 in torch
# 2.13). Past it, torch 2.13 writes a Gelu node the ONNX checker rejects at opset 26 and above.
MAX_OPSET = 23
# Parity gate: |onnx - torch| <= ATOL + RTOL * max|torch| over all logits.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4
