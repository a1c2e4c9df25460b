"""The Architecture sections of PaddleOCR's public PP-OCRv3 / PP-OCRv4 mobile configs, written
here after them: one copy for tests/test_ppocr_adapter.py and benchmarks/flagship_graph_ocr.py
(which puts this folder on ``sys.path``). Nothing here imports PaddleOCR or pytest."""
import copy

MOBILE_DET = {
    # configs/det/PP-OCRv4/PP-OCRv4_mobile_det.yml: PPLCNetV3 x0.75 with learnable affine blocks,
    # RSEFPN, DBHead with fix_nan
    "v4": {"Backbone": {"name": "PPLCNetV3", "scale": 0.75, "det": True},
           "Neck": {"name": "RSEFPN", "out_channels": 96, "shortcut": True},
           "Head": {"name": "DBHead", "k": 50, "fix_nan": True}},
    # configs/det/ch_PP-OCRv3/ch_PP-OCRv3_det_student.yml: MobileNetV3 large x0.5 without SE, RSEFPN
    "v3": {"Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large", "disable_se": True},
           "Neck": {"name": "RSEFPN", "out_channels": 96, "shortcut": True},
           "Head": {"name": "DBHead", "k": 50}},
}
MOBILE_REC = {
    # configs/rec/PP-OCRv4/PP-OCRv4_mobile_rec.yml: PPLCNetV3 x0.95, MultiHead [CTC with the SVTR
    # neck, NRTR]; the tensor reading the last backbone conv in the NRTR branch
    "v4": ({"algorithm": "SVTR_LCNet", "Backbone": {"name": "PPLCNetV3", "scale": 0.95},
            "Head": {"name": "MultiHead", "head_list": [
                {"CTCHead": {"Neck": {"name": "svtr", "dims": 120, "depth": 2, "hidden_dims": 120,
                                      "kernel_size": [1, 3], "use_guide": True},
                             "Head": {"fc_decay": 0.00001}}},
                {"NRTRHead": {"nrtr_dim": 384, "max_text_length": 10}}]}},
           "NRTR", "head.before_gtc.1.fc.weight"),
    # configs/rec/PP-OCRv3/ch_PP-OCRv3_rec.yml: MobileNetV1Enhance x0.5, MultiHead [CTC with the
    # SVTR neck, SAR]; the SAR encoder's LSTM reads the last backbone conv
    "v3": ({"algorithm": "SVTR_LCNet",
            "Backbone": {"name": "MobileNetV1Enhance", "scale": 0.5, "last_conv_stride": [1, 2],
                         "last_pool_type": "avg", "last_pool_kernel_size": [2, 2]},
            "Head": {"name": "MultiHead", "head_list": [
                {"CTCHead": {"Neck": {"name": "svtr", "dims": 64, "depth": 2, "hidden_dims": 120,
                                      "use_guide": True},
                             "Head": {"fc_decay": 0.00001}}},
                {"SARHead": {"enc_dim": 512, "max_text_length": 10}}]}},
           "SAR", "head.sar_head.encoder.rnn_encoder.weight_ih_l0"),
}


def mobile_det_arch(version):
    """A whole ``Architecture`` section of the PP-OCR ``version`` mobile detector."""
    return {"model_type": "det", "algorithm": "DB", "Transform": None, **copy.deepcopy(MOBILE_DET[version])}


def mobile_rec_arch(version, max_text_length):
    """A whole ``Architecture`` section of the PP-OCR ``version`` mobile recogniser, its second
    (SAR / NRTR) head decoding up to ``max_text_length`` characters."""
    arch = {"model_type": "rec", "Transform": None, **copy.deepcopy(MOBILE_REC[version][0])}
    for head in arch["Head"]["head_list"][1].values():
        head["max_text_length"] = max_text_length
    return arch
