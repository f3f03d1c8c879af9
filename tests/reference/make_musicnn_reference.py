"""Run Pons's original musicnn (TensorFlow, librosa) on the MTAT clip and save
its outputs, for the course's tests. Scratch environment only:
  pip install tensorflow-cpu tf-keras librosa ; pip install --no-deps musicnn==0.1.0
Patches (REFERENCE.md section 5): float32 before the 10000 * x (NumPy 2), pad_mode='reflect' (librosa >= 0.10)."""
import os, sys, json
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
import librosa
import musicnn.extractor as ex

_orig = librosa.feature.melspectrogram
def melspectrogram(**kw):
    kw.setdefault("pad_mode", "reflect")
    return _orig(**kw)
librosa.feature.melspectrogram = melspectrogram

_log10 = np.log10
class _NP:   # the extractor does np.log10(10000 * audio_rep + 1) on a float16 array: promote first
    pass
def batch_data(audio_file, n_frames, overlap):
    audio, sr = librosa.load(audio_file, sr=16000)
    rep = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=256, n_fft=512, n_mels=96).T
    rep = rep.astype(np.float16)
    rep = np.log10(10000 * rep.astype(np.float32) + 1)
    last = rep.shape[0] - n_frames + 1
    batch = np.stack([rep[t:t + n_frames] for t in range(0, last, overlap)])
    return batch, rep
ex.batch_data = batch_data

clip = sys.argv[1]
out = {}
for model in ("MTT_musicnn", "MTT_vgg", "MSD_musicnn", "MSD_vgg"):
    taggram, tags, features = ex.extractor(clip, model=model, input_length=3, extract_features=True)
    out[f"{model}/taggram"] = taggram.astype(np.float32)
    for k in ("penultimate", "max_pool", "mean_pool", "timbral", "temporal", "pool5"):
        if k in features:
            out[f"{model}/{k}"] = np.asarray(features[k], dtype=np.float32)
    print(model, taggram.shape, [tags[i] for i in np.argsort(-taggram.mean(0))[:10]])
batch, rep = batch_data(clip, 187, 187)
out["input/log_mel"] = rep.astype(np.float32)
np.savez_compressed(sys.argv[2], **out)
