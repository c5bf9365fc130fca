"""``tcm eval``: rate-distortion evaluation of our models against classic codecs.

Modules, one concept each:

* :mod:`.metrics` -- PSNR (numpy) and MS-SSIM (the ``pytorch_msssim`` package) on 8-bit images;
* :mod:`.bdrate` -- Bjontegaard delta rate/PSNR by the ``bjontegaard`` package (PCHIP or Akima;
  imported lazily: the ``eval`` extra, not the service's);
* :mod:`.baselines` -- JPEG 4:2:0/4:4:4, WebP and AVIF through Pillow;
* :mod:`.published` -- the official TCM rate-distortion points (``rd-published.json``);
* :mod:`.runner` -- real coding of a dataset by every codec and setting, and the averages;
* :mod:`.report` -- CSV, JSON, the text table and the plot.
"""
