# Voila configuration for the apps in this folder. Voila reads it when it is started from here
# (Voila.config_file_paths starts with the current directory), which is what `course app bears` does:
#   cd nbs/apps && voila bear_classifier.ipynb
c = get_config()  # noqa: F821


def set_xsrf_cookie(req, notebook, cwd):
    """Make closing a tab shut its kernel down (voila 0.5.13, voila-dashboards/voila#1458).

    The page's `beforeunload` handler POSTs /voila/api/shutdown/<kernel> with the `_xsrf` cookie, but
    nothing sets that cookie, so the POST is refused and the kernel of every closed tab keeps running.
    Reading `req.xsrf_token` makes tornado set the cookie on this page's (not yet sent) response.
    Pre-heated kernels (--preheat_kernel=True) skip this hook, so the apps do not pre-heat.
    """
    req.xsrf_token
    return None  # the notebook itself is unchanged


c.VoilaConfiguration.prelaunch_hook = set_xsrf_cookie

# Visitors never see Python tracebacks (the apps show their own messages).
c.VoilaConfiguration.show_tracebacks = False

# Kernels whose tab vanished without `beforeunload` (crash, phone asleep, network loss) are culled when idle.
c.MappingKernelManager.cull_idle_timeout = 15 * 60  # seconds without kernel activity
c.MappingKernelManager.cull_interval = 60
c.MappingKernelManager.cull_connected = True  # also cull idle tabs that are still open

# One upload travels as one websocket message. Tornado's default cap is 10 MiB and a bigger message
# drops the connection without a word; the apps refuse files over 5 MB themselves, with a message.
c.Voila.tornado_settings = {"websocket_max_message_size": 8 * 1024 * 1024}

# /voila/files/ would serve every png/jpg/gif/svg under this folder; the apps need none.
c.VoilaConfiguration.file_allowlist = []
