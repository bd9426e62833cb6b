"""polydiff.domains.audio: speech and audio on the shared core.

Modules (import them directly; nothing heavy is imported here):

* ``io``: read/write with soundfile, mono conversion, resampling, checks for empty, silent, clipped audio.
* ``features``: log-mel (16 kHz, n_fft 1024, hop 256, 80 mels), Griffin-Lim, SGMSE+ compressed STFT.
* ``text``: text normalization, characters and CMU-dictionary phonemes (pocketsphinx's copy).
* ``corpus``: an LJSpeech-format corpus synthesized with Debian's flite; the LJSpeech loader.
* ``metrics``: WER/CER with pocketsphinx, MCD with DTW, F0 RMSE, PESQ, ESTOI, SI-SDR, real-time factor.
* ``tts``: Grad-TTS (text encoder, durations, monotonic alignment search, a diffusion mel decoder on the
  core's mean-reverting path, Griffin-Lim); ``train_tts`` trains it; ``polydiff speak`` runs it.
* ``enhance``: noisy mixtures (white, coloured, babble), a Wiener baseline, an SGMSE+-style conditional
  model on the core's OUVE path and the unsupervised route (clean prior + noise model); ``train_enhance``
  trains it; ``polydiff enhance`` runs it.

Not built yet (issue 7): the diffusion vocoder (Griffin-Lim is the vocoder).
"""
