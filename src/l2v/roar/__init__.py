"""Recursive ROAR (Madsen, Meade, Adlakha, Reddy; Findings of EMNLP 2022): is an importance measure faithful?

Mask the tokens a measure calls important, retrain, and compare the performance drop with random masking;
recursively, so the model that picks the next tokens is the one trained on the current masking. RACU (relative
area between curves) summarises a measure: 1 is as faithful as it gets, 0 no better than random, < 0 worse.

``data`` (SST, bAbI), ``models`` (BiLSTM + additive attention), ``importance`` (attention, gradient, input x
gradient, integrated gradients, random), ``masking``, ``racu``, ``training``, ``runner`` (every step cached on
disk, resumable), ``report`` (curves, RACU table), ``synthetic`` (the paper's logistic-regression check) and
``encoder_classifier`` (the same analysis for an l2v encoder + linear head).
"""
