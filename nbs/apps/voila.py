# Voila configuration for the apps in this folder. Voila reads it when it is started from here
# (Voila.config_file_paths starts with the current directory), which is what `course app bears` does:
#   cd nbs/apps && voila bear_classifier.ipynb
import inspect
import os

from voila.voila_identity_provider import VoilaIdentityProvider

c = get_config()  # noqa: F821


class SetsXsrfCookie(VoilaIdentityProvider):
    """Make closing a tab shut its kernel down (voila 0.5, voila-dashboards/voila#1458).

    The page's `beforeunload` handler POSTs /voila/api/shutdown/<kernel> with the `_xsrf` cookie, but
    nothing sets that cookie, so the POST is refused and the kernel of every closed tab keeps running.
    Every request asks the identity provider who is calling; reading `xsrf_token` there makes tornado
    set the cookie on the page's response, whether the page comes from a pre-heated kernel or a new one.
    """

    async def get_user(self, handler):
        user = super().get_user(handler)
        if inspect.isawaitable(user): user = await user
        if handler.request.method == 'GET':
            handler.current_user = user  # tornado asks who it is for before it sets the cookie
            handler.xsrf_token
        return user


c.Voila.identity_provider_class = SetsXsrfCookie

# A crowd arriving at once would each wait for a kernel to start and run the app's notebook (two cores
# manage about one a second). Pre-heated kernels have already run it: a visitor takes one and the pool
# refills behind them after a pause, so that a burst of visitors is served before the refill competes
# for the cores (with 16 visitors on 2 cores, a 5 s pause made the page take 21 s instead of 13 s).
# Each waiting kernel holds about 200 MB; COURSE_APP_POOL (or `course app --pool`) sets how many wait.
c.VoilaConfiguration.preheat_kernel = True
c.VoilaConfiguration.default_pool_size = int(os.environ.get('COURSE_APP_POOL', '4'))
c.VoilaKernelManager.fill_delay = 20  # seconds after a visitor takes a kernel

# Visitors never see Python tracebacks (the apps show their own messages).
c.VoilaConfiguration.show_tracebacks = False

# Kernels whose tab vanished without `beforeunload` (crash, phone asleep, network loss) are culled when
# idle; Voila never culls the pre-heated ones.
c.MappingKernelManager.cull_idle_timeout = 15 * 60  # seconds without kernel activity
c.MappingKernelManager.cull_interval = 60
c.MappingKernelManager.cull_connected = True  # also cull idle tabs that are still open

# One upload travels as one websocket message, and a message over this cap drops the connection
# without a word. The apps' upload button refuses files over 20 MB in the browser, below this cap.
c.Voila.tornado_settings = {"websocket_max_message_size": 32 * 1024 * 1024}

# /voila/files/ would serve every png/jpg/gif/svg under this folder; the apps need none.
c.VoilaConfiguration.file_allowlist = []
