import sys

from stoker.devcluster.realnodes.deviceplugin.plugin import main

sys.exit(main())
