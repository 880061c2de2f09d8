/* The login form that oeleo serve shows off loopback: POST /api/login sets the session cookie,
   then the monitor page itself is loaded. The token is kept in sessionStorage only. */
"use strict";

(function () {
  var TOKEN_KEY = "oeleo-monitor-token";

  function start() {
    var form = document.getElementById("page-login-form");
    var field = document.getElementById("page-token");
    var message = document.getElementById("page-login-message");
    field.focus();
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var token = field.value.trim();
      message.hidden = true;
      fetch("api/login", {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: token }),
      })
        .then(function (response) {
          return response.text().then(function (text) {
            var data = {};
            try {
              data = JSON.parse(text) || {};
            } catch (e) {
              data = {};
            }
            if (response.ok && data.csrf) {
              try {
                sessionStorage.setItem(TOKEN_KEY, token);
              } catch (e) {
                /* storage off: the session cookie still works */
              }
              window.location.assign("./");
              return;
            }
            message.textContent = "Log in refused (" + response.status + "): " + (data.error || "the token was not accepted");
            message.hidden = false;
            field.select();
          });
        })
        .catch(function (error) {
          message.textContent = "Cannot reach oeleo serve: " + error.message;
          message.hidden = false;
        });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
