// Starts Swagger UI on the gateway's own OpenAPI document. It lives in a file, not inline in the page, so the
// page's Content-Security-Policy can refuse every inline script.
"use strict";
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  domNode: root,
  deepLinking: true,
  // Swagger UI's default sends the whole document to validator.swagger.io for a badge: never leave the origin.
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
