"""imserver: one Twisted server for five chat, karaoke and IM protocols."""
