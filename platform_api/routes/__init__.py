"""The API's routers, one per resource: twins, predictions, images, alerts, registry review, admin, OAuth2."""
