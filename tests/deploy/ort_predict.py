"""Print each ONNX model's top-1 predictions on an .npy batch (numpy + onnxruntime only: cheap to run
under CPU emulation). Usage: ort_predict.py X.npy MODEL.onnx [MODEL.onnx ...]"""

import sys

import numpy as np
import onnxruntime as ort

x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    pred = sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)
    print(path, " ".join(map(str, pred.tolist())), flush=True)
