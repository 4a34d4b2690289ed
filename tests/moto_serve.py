"""The tests' moto server: moto's own app served as the local cloud's endpoint serves it, one
request at a time (bakery/local/control.py OneRequestAtATime), with what a test asks for installed
first; it ends with the process that started it. A test's FakeBuilderHost polls moto from a thread while the bake calls it: moto alone, not
thread-safe, would now and then answer one of them with an HTML 500.

    python -m tests.moto_serve PORT [--api-answers] [--slow-images SECONDS]
"""

from __future__ import annotations

import argparse
import os
import threading
import time


def end_with(parent: int) -> None:
    """Exit once `parent` (the test process that started this server) is gone, however it went: a
    killed pytest run must not leave its moto servers behind."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--api-answers", action="store_true", help="bakery/local/moto_extensions.py install_api_answers")
    ap.add_argument("--slow-images", type=float, help="tests/slow_images.py install(SECONDS)")
    args = ap.parse_args()
    end_with(os.getppid())
    if args.api_answers:
        from bakery.local.moto_extensions import install_api_answers

        install_api_answers()
    if args.slow_images is not None:
        from tests.slow_images import install

        install(args.slow_images)
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from bakery.local.control import OneRequestAtATime

    app = OneRequestAtATime(DomainDispatcherApplication(create_backend_app))
    make_server("127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler).serve_forever()


if __name__ == "__main__":
    main()
