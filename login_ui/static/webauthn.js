// Security keys and passkeys on authgate's pages. No dependencies, no inline code:
// the CSP is script-src 'self', so every handler is attached from here.
//
// Each ceremony: POST the form (CSRF token included) to get options as JSON,
// call navigator.credentials.create/get, POST the result as JSON with the same
// token, then follow the "redirect" the server answers with.
(function () {
  "use strict";

  if (!window.PublicKeyCredential || !navigator.credentials) {
    return; // no WebAuthn here: the forms stay as they are
  }

  function toBuffer(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) { b64 += "="; }
    var raw = atob(b64);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) { raw += String.fromCharCode(bytes[i]); }
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (d) {
      return { type: d.type, id: toBuffer(d.id), transports: d.transports };
    });
  }

  function creationOptions(o) {
    o.challenge = toBuffer(o.challenge);
    o.user.id = toBuffer(o.user.id);
    o.excludeCredentials = descriptors(o.excludeCredentials);
    return o;
  }

  function requestOptions(o) {
    o.challenge = toBuffer(o.challenge);
    o.allowCredentials = descriptors(o.allowCredentials);
    return o;
  }

  function credentialJSON(c) {
    var r = c.response;
    var response = { clientDataJSON: toText(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toText(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toText(r.authenticatorData);
      response.signature = toText(r.signature);
      if (r.userHandle) { response.userHandle = toText(r.userHandle); }
    }
    return {
      id: c.id,
      rawId: toText(c.rawId),
      type: c.type,
      response: response,
      clientExtensionResults: c.getClientExtensionResults ? c.getClientExtensionResults() : {},
      authenticatorAttachment: c.authenticatorAttachment || undefined
    };
  }

  function post(url, body, contentType) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Accept": "application/json", "Content-Type": contentType },
      body: body
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (!resp.ok) {
          var error = new Error(data.error || "Something went wrong. Please try again.");
          error.redirect = data.redirect;
          throw error;
        }
        return data;
      });
    });
  }

  function postForm(form) {
    var params = new URLSearchParams();
    new FormData(form).forEach(function (value, key) { params.append(key, value); });
    return post(form.action, params.toString(), "application/x-www-form-urlencoded");
  }

  function postJSON(url, data) {
    return post(url, JSON.stringify(data), "application/json");
  }

  function field(form, name) {
    var input = form.querySelector('[name="' + name + '"]');
    return input ? input.value : "";
  }

  function showError(form, error) {
    if (error && error.redirect) { window.location.assign(error.redirect); return; }
    if (error && (error.name === "AbortError")) { return; }
    var message = error && error.name === "NotAllowedError"
      ? "The request was cancelled or timed out."
      : (error && error.message) || "Something went wrong. Please try again.";
    var box = form.parentNode.querySelector("[data-ag-webauthn-error]");
    if (!box) {
      box = document.createElement("div");
      box.className = "ag-alert";
      box.setAttribute("role", "alert");
      box.setAttribute("data-ag-webauthn-error", "");
      form.parentNode.insertBefore(box, form);
    }
    box.textContent = message;
  }

  function done(data) {
    window.location.assign(data.redirect || "/");
  }

  // --- sign in with a passkey (login page), with conditional UI where available ----

  function signIn(form, publicKey, mediation, signal) {
    var request = { publicKey: requestOptions(publicKey) };
    if (mediation) { request.mediation = mediation; }
    if (signal) { request.signal = signal; }
    return navigator.credentials.get(request).then(function (credential) {
      return postJSON(form.action + "/verify", {
        csrf_token: field(form, "csrf_token"),
        rd: field(form, "rd"),
        credential: credentialJSON(credential)
      });
    }).then(done);
  }

  function setUpLogin(form) {
    var pending = null; // the conditional request, aborted when the button is used
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var waitFor = Promise.resolve();
      if (pending) {
        pending.controller.abort();
        waitFor = pending.promise.catch(function () {});
        pending = null;
      }
      waitFor.then(function () { return postForm(form); })
        .then(function (options) { return signIn(form, options); })
        .catch(function (error) { showError(form, error); });
    });
    if (PublicKeyCredential.isConditionalMediationAvailable) {
      PublicKeyCredential.isConditionalMediationAvailable().then(function (available) {
        if (!available) { return; }
        var controller = new AbortController();
        var promise = postForm(form).then(function (options) {
          return signIn(form, options, "conditional", controller.signal);
        });
        pending = { controller: controller, promise: promise };
        promise.catch(function (error) {
          if (pending && pending.promise === promise) { showError(form, error); }
        });
      });
    }
  }

  // --- the page a no-script button press lands on: run the ceremony at once ----------

  function setUpAutomatic(form) {
    var publicKey = JSON.parse(form.getAttribute("data-ag-options"));
    var run = function () {
      signIn(form, publicKey).catch(function (error) { showError(form, error); });
    };
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      postForm(form).then(function (options) {
        return signIn(form, options);
      }).catch(function (error) { showError(form, error); });
    });
    run();
  }

  // --- second factor (mfa page) -------------------------------------------------------

  function setUpSecondFactor(form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      postForm(form).then(function (options) {
        return navigator.credentials.get({ publicKey: requestOptions(options) });
      }).then(function (credential) {
        return postJSON(form.getAttribute("data-ag-verify"), {
          csrf_token: field(form, "csrf_token"),
          rd: field(form, "rd"),
          credential: credentialJSON(credential)
        });
      }).then(done).catch(function (error) { showError(form, error); });
    });
  }

  // --- add a security key or passkey (account page) -----------------------------------

  function setUpRegistration(form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      postForm(form).then(function (options) {
        return navigator.credentials.create({ publicKey: creationOptions(options) });
      }).then(function (credential) {
        return postJSON(form.getAttribute("data-ag-register"), {
          csrf_token: field(form, "csrf_token"),
          name: field(form, "name"),
          credential: credentialJSON(credential)
        });
      }).then(done).catch(function (error) { showError(form, error); });
    });
  }

  function each(selector, setUp) {
    Array.prototype.forEach.call(document.querySelectorAll(selector), setUp);
  }

  function start() {
    each("form.ag-passkey:not([data-ag-options])", setUpLogin);
    each("form[data-ag-options]", setUpAutomatic);
    each("form[data-ag-verify]", setUpSecondFactor);
    each("form[data-ag-register]", setUpRegistration);
    each("[data-ag-webauthn-only]", function (el) { el.hidden = false; });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
