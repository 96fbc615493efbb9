import os
import sys

# `python -m trtprune` puts the working directory first on sys.path, so a stray numpy.py or onnx.py lying
# there would be imported in place of the real module. trtprune itself is imported already: drop it.
if not getattr(sys.flags, "safe_path", False) and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from trtprune.entry import main  # noqa: E402

sys.exit(main())
