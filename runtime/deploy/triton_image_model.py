"""The `NAME_image` model of `ffx serve`: a Triton Python-backend model (this file is its model.py).

It runs inside Triton's Python-backend stub process, not in ffx's: each request's encoded images
(BYTES [N, 1]) are decoded with ffx's one decoder (photo formats only, sizes bounded from the
header, `ffx.images`) and preprocessed from the model's metadata, exactly as `ffx predict` does,
then sent to the float model `NAME` with Business Logic Scripting, so they share its dynamic
batching and its runner. An image that does not decode fails its own request with INVALID_ARG:
HTTP 400 (gRPC INVALID_ARGUMENT) and one line, "image 0: ...", never a traceback or a path.

Its config (written by `ffx.runtime.deploy.serving`) passes, as string parameters: `ffx_path` (the folder
holding the `ffx` package the server runs), `preprocess` (JSON), `target_model`, `target_input`,
`target_input_dtype` and `target_output`.
"""

import json
import sys
import types

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = {key: value["string_value"] for key, value in json.loads(args["model_config"])["parameters"].items()}
        sys.path.insert(0, parameters["ffx_path"])  # the ffx the server runs, wherever it is installed
        from ffx import images

        self.images = images
        self.preprocess = types.SimpleNamespace(**json.loads(parameters["preprocess"]))
        self.target_model = parameters["target_model"]
        self.target_input = parameters["target_input"]
        self.target_input_dtype = np.dtype(parameters["target_input_dtype"])
        self.target_output = parameters["target_output"]

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
        arrays = []
        for index, row in enumerate(encoded.reshape(len(encoded), -1)):
            name = f"image {index}"
            try:
                rgb = self.images.decode_rgb(bytes(row[0]), name)
                arrays.append(self.images.preprocess_image(rgb, self.preprocess, name))
            except self.images.UnreadableImage as e:
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        batch = np.stack(arrays).astype(self.target_input_dtype, copy=False)
        response = pb_utils.InferenceRequest(
            model_name=self.target_model, requested_output_names=[self.target_output],
            inputs=[pb_utils.Tensor(self.target_input, batch)]).exec()
        if response.has_error():
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(response.error().message()))
        logits = pb_utils.get_output_tensor_by_name(response, self.target_output).as_numpy()
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.target_output, logits)])
